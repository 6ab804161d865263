"""Pure HTTP semantics (RFC 9110 ranges and conditional requests) shared by server and proxy."""
