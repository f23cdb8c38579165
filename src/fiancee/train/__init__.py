"""Training code: the fashion backbone (OASIS recipe) and its discriminator; exit training builds on them."""
