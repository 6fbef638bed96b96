"""HTTP/1.1 on asyncio protocols and httptools: a server, a pooled client, and their shared message types."""
