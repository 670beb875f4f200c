"""Who may log in: password files, Digest, checkers, the login throttle, the portal."""
