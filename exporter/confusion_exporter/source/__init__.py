"""The only package that builds SQL: table mapping, engines and count queries."""
