"""Conveyor gateway: the aiohttp JSON API."""
