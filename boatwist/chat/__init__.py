"""The operators' chat room: the room itself, the telnet filter, the chat session and its thin protocol."""
