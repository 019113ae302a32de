module pilothouse.local/standin

go 1.24
