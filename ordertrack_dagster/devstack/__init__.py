"""Local stand-ins for every server the product talks to: the demo, test and benchmark stack."""
