"""bids_mrisr.cli."""
