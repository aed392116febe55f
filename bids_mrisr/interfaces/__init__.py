"""bids_mrisr.interfaces."""
