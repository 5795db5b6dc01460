"""The provider proxy: routing, header hygiene and the streaming relay."""
