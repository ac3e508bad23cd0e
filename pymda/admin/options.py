"""pymda-admin's shared options: ``-c FILE`` and ``-o KEY=VALUE``, for
every subcommand that reads the configuration (SPEC 5: every program
takes ``-c``; ``-o`` as for ``pymda``)."""

import click


def config_options(f):
    f = click.option(
        "-o", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
        help="Override one config key (repeatable).",
    )(f)
    f = click.option(
        "-c", "--config", "config_path", metavar="FILE",
        type=click.Path(dir_okay=False), help="Configuration file.",
    )(f)
    return f


def load_config(config_path, overrides):
    from pymda import config

    return config.load(config_path, list(overrides))
