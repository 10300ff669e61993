"""A look at a finished folder: the HTML gallery, the contact sheet, and the status counts."""
