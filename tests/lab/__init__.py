"""The lab: the real parts the tests and the benchmarks run the receiver against, each once.

* :mod:`~tests.lab.broker`: Mosquitto on a port of its own, and a paho subscriber/publisher.
* :mod:`~tests.lab.ca`: a throw-away certificate authority for every TLS test.
* :mod:`~tests.lab.web`: HTTP servers in a thread: a media directory, per-path behaviours.
* :mod:`~tests.lab.streams`: a live MP3/Ogg stream paced like Icecast, with failure modes.
* :mod:`~tests.lab.stations`: real stations: Icecast2 fed by FFmpeg, live HLS made by FFmpeg.
* :mod:`~tests.lab.daemon`: ``receiver run`` as a child process, its config and its log lines.
* :mod:`~tests.lab.audio`: test tones written, and the WAV the player wrote analysed.
* :mod:`~tests.lab.tools`: the programs the lab needs and the ports it takes.

Nothing here imports pytest (the benchmarks use the lab without it) and this package imports
nothing itself, so the core tier, which needs none of it, runs without paho installed. A missing
program fails loudly (:class:`tests.lab.tools.MissingToolError`), never skips.
"""
