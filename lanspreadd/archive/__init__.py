"""RAR archives: safe listing, extraction back-ends, and a stored-archive writer."""
