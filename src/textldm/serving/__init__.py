"""The web app: request models, the generation service, the routes."""
