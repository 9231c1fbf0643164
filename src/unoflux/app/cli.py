"""``unoflux app``: start the web app on a local port (found by ``unoflux.cli`` through ``register``)."""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import socket
import sys
from pathlib import Path

from ..cli import add_model_args, default_image_size, load_pipeline_from_args
from ..errors import UnofluxError


def register(subparsers) -> None:
    p = subparsers.add_parser("app", help="start the web app (Gradio) on localhost", description=cmd_app.__doc__)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    g.add_argument("--out", default="outputs/app", help="folder for results and their references (default outputs/app)")
    g.add_argument("--concurrency", type=int, default=1, help="generations running at once (default 1 per device)")
    g.add_argument(
        "--max-queue",
        type=int,
        default=16,
        help="requests allowed to wait; beyond this a request is refused (the page: 'currently busy') (default 16)",
    )
    g.add_argument("--max-upload", default="50mb", help="largest reference upload (default 50mb)")
    g.add_argument(
        "--max-upload-megapixels",
        type=float,
        default=40.0,  # ui.DEFAULT_MAX_UPLOAD_MEGAPIXELS (ui imports Gradio, which `unoflux -h` does not)
        metavar="MP",
        help="largest reference upload in decoded pixels, read from its header before decoding (default 40)",
    )
    g.add_argument(
        "--log-file",
        metavar="PATH",
        help="also append the log (a line per request: its id, settings and time; refusals; faults) to this file",
    )
    g.add_argument(
        "--auth",
        metavar="USER:PASSWORD",
        help="ask for this user name and password before showing the page (for a --host other machines reach)",
    )
    add_model_args(p)
    p.set_defaults(func=cmd_app)


def cmd_app(args: argparse.Namespace) -> int:
    """Serve a page for prompt + up to four reference images -> images, on the model the flags name
    (the same model flags and environment variables as `unoflux generate`)."""
    if importlib.util.find_spec("gradio") is None:
        raise UnofluxError("the web app needs Gradio; install it with: pip install 'unoflux[app]'")
    if args.concurrency < 1 or args.max_queue < 1:
        raise UnofluxError(f"--concurrency ({args.concurrency}) and --max-queue ({args.max_queue}) must be at least 1")
    if not args.max_upload_megapixels > 0:
        raise UnofluxError(f"--max-upload-megapixels {args.max_upload_megapixels:g} must be a positive number")
    serve(args)
    return 0


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``--auth user:password`` -> ("user", "password") for Gradio's login (the password may hold colons)."""
    if value is None:
        return None
    user, colon, password = value.partition(":")
    if not (user and colon and password):
        raise UnofluxError(f"--auth {value!r} must be USER:PASSWORD, both non-empty")
    return user, password


def check_address(host: str, port: int) -> None:
    """Refuse a port something already listens on, now rather than after minutes of model loading; warn
    (one line) when the address is reachable from other machines."""
    if not 1 <= port <= 65535:
        raise UnofluxError(f"--port {port} must be a port number from 1 to 65535")
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError, OverflowError):
        raise UnofluxError(f"--host {host!r} with --port {port} is not an address this machine can bind") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # as the server binds: SO_REUSEADDR passes a port a closed server left in TIME_WAIT, not one in use
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise UnofluxError(
                f"cannot serve on {host}:{port} ({err.strerror or err}); is another app running there? "
                "Choose another --port"
            ) from None
    if not ipaddress.ip_address(address[0]).is_loopback:
        print(
            f"unoflux: warning: --host {host} lets other machines reach the app (and every result in its --out "
            "folder); add --auth USER:PASSWORD unless the network is yours alone",
            file=sys.stderr,
        )


def check_log_file(path: str) -> None:
    """``--log-file`` can be appended to: refused in one sentence now, not after the model has loaded."""
    target = Path(path)
    if target.is_dir():
        raise UnofluxError(f"--log-file {path!r} is a folder; give a file path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8"):
            pass
    except OSError as err:
        raise UnofluxError(f"--log-file {path!r} cannot be written ({err.strerror or err})") from None


def serve(args: argparse.Namespace, block: bool = True):
    """Load the model the flags name and serve the app; ``block=False`` returns the running
    ``gr.Blocks`` at once (tests close it with ``.close()``). The address and ``--auth`` are checked first."""
    auth = parse_auth(getattr(args, "auth", None))
    check_address(args.host, args.port)
    log_file = getattr(args, "log_file", None)
    if log_file is not None:
        check_log_file(log_file)
    pipe, model = load_pipeline_from_args(args)

    from .command import model_flags
    from .ui import build_app, configure_logging, launch

    configure_logging(log_file)
    pipe.set_progress_bar_config(disable=True)  # the page shows the steps; the server's log keeps one line a request

    demo = build_app(
        pipe,
        model,
        args.out,
        args.concurrency,
        args.max_queue,
        model_flags(args),
        default_size=default_image_size(pipe),
        max_upload_megapixels=getattr(args, "max_upload_megapixels", None),
    )
    launch(demo, args.out, host=args.host, port=args.port, max_upload=args.max_upload, block=block, auth=auth)
    return demo
