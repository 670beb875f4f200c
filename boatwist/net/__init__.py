"""Network plumbing: socket options, TCP_INFO, connection tracking and the network ACL."""
