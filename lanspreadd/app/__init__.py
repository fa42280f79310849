"""The application: composition root, games and jobs, what we serve, downloader, supervisor, logs, config."""
