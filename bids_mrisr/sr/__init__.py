"""bids_mrisr.sr."""
