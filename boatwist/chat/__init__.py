"""
The operators' chat room: the room, event lines, telnet, the login gate,
commands, the session (no I/O) and its thin protocol.
"""
