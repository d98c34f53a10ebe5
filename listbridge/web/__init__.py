"""HTTP: RFC 8058 one-click unsubscribe (unsubscribe.py), served in a thread of its own
(server.py) so that nothing on the HTTP side can stall or take down the SMTP side."""
