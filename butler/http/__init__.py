"""Pure HTTP pieces shared by server, proxy and clients: RFC 9110 ranges and conditional
requests, the file bundle framing, and the server's error answers."""
