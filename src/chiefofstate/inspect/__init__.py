"""Reading the application's own messages: the write handler's descriptors and what they decode.

Shared by the operator CLI and anything else that shows events and states to a person; docs/cli.md.
"""
