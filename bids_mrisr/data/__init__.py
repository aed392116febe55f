"""bids_mrisr.data."""
