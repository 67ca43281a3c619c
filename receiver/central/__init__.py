"""The operator's side: ``receiver-admin`` and what it signs, validates, collects and reports.

Nothing in the board's daemon imports this package; it imports the device's wire rules
(``receiver.core``) so that what it signs is checked exactly as a receiver would check it.
"""
