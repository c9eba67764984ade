"""Typed keys of the objects the gateway keeps in its aiohttp application."""

from aiohttp import web
from nats.js import JetStreamContext

from libs.config import Config
from libs.secrets import SecretVault

from .projection import Projection

JS_KEY = web.AppKey("js", JetStreamContext)
VAULT_KEY = web.AppKey("vault", SecretVault)
PROJECTION_KEY = web.AppKey("projection", Projection)
CONFIG_KEY = web.AppKey("config", Config)
