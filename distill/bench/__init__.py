"""`distill bench step|sample|quality`: cost ratios and quality on the digits benchmark (not timed tests)."""
