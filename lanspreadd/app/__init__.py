"""The application: composition root, games and jobs, what we serve,
the downloader, the supervisor, logs and configuration.
"""
