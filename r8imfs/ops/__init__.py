"""What commands do, as async functions independent of argparse and printing."""
