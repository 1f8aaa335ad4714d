"""What people open: tables (CSV/JSONL), and later the HTML report and emoji video."""
