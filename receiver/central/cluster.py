"""Retained documents on every node of a broker cluster that does not share them.

Debian's ejabberd 23.01 (``mod_mqtt``) carries live messages and sessions across the nodes of a
cluster, but each node keeps its own list of retained messages (it shares them only after a node
restarts): a trust document or a schedule published on one node is missing for a receiver that
subscribes on another. ``receiver-admin trust`` and ``schedule`` therefore take ``--node
HOST:PORT`` (again for each further node) and publish the retained document on every node too.
A receiver connected at that moment gets the live copies of each publish; they are the same
signed document, and the second is answered as a duplicate (protocol §7.3).
"""

from __future__ import annotations

import argparse
import dataclasses

from receiver.central.broker import BrokerOptions
from receiver.central.inputs import host as checked_host

__all__ = ["add_node_option", "further_nodes"]


def add_node_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="another node of the broker's cluster: retained documents are published there too",
    )


def further_nodes(args: argparse.Namespace) -> list[BrokerOptions]:
    """The other nodes' connection options (the same credentials and TLS as ``--host``).

    Each is checked, its host as ``--host`` is, before anything is published: a node refused
    only once the first broker holds the document would leave the cluster split."""
    nodes: list[BrokerOptions] = []
    for text in getattr(args, "node", None) or ():
        host, _, port = str(text).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--node {text!r}: write HOST:PORT, e.g. mqtt-2.example.vn:8883")
        try:
            checked_host(host)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(
                f"--node {text!r}: give the node's host name or address and port without a "
                "scheme, e.g. mqtt-2.example.vn:8883 (TLS is --cafile)"
            ) from exc
        nodes.append(dataclasses.replace(BrokerOptions.from_args(args), host=host, port=int(port)))
    return nodes
