"""Studio users and their sessions: the people who sign in with a browser (STUDIO.md)."""
