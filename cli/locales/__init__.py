"""Message catalogs of the CLI, one JSON object per language (same keys in each; a unit test
checks it). A package so that the catalogs ship with the wheel as package data."""
