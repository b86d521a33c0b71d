"""What a stack costs and who pays: prices, the account's bill, dues, billing hooks, the funding note."""
