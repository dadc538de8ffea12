"""Analytics unit: flags PoPs that must shed load and PoPs that can take it."""
