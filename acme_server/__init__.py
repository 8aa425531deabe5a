"""privca front end (being built): see its issue."""
