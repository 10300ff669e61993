"""Game-ready sprites from the raw canvases: derivation, their files, the packer and atlas sheets."""
