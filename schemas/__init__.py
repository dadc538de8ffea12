"""Message and table formats shared by every service (SPEC sections 2 and 3)."""
