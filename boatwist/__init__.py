"""
boatwist: a web server for embedded devices that control hardware.

One process, one event loop: strict HTTP authentication, a chat room for the
operators, and presence that notices a pulled cable within seconds.
"""

__version__ = "0.1.0"
