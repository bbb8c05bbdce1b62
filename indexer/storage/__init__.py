"""Where stored images come from and how they are read back: source uris, folders, archives, thumbnails."""
