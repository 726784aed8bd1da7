"""`batchpress`: the command-line client of a Batchpress service (HTTP only, no server code)."""
