"""bids_mrisr.bids."""
