"""Model and dataset cards generated from real results, and publishing to the Hub."""
