"""bids_mrisr.reports."""
