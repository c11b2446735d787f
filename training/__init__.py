"""Training scripts for every stage of Kosmos-G and GILL (run as ``accelerate launch -m training.<script>``)."""
