"""RabbitMQ in the shipped deployments: the compose override and the Helm
values file point every component at it, and keep results on Redis."""

from __future__ import annotations

import yaml

from tests.test_deploy_compose import compose_config
from tests.test_helm_chart import CHART, PROD, render


def test_the_compose_override_moves_every_component_to_rabbitmq() -> None:
    stack = compose_config("docker-compose.yml", "docker-compose.rabbitmq.yml")
    assert "rabbitmq" in stack["services"]
    for name in ("api", "worker-1", "worker-2", "flower"):
        env = stack["services"][name]["environment"]
        assert env["ORCH_BROKER_URL"].startswith("amqp://"), name
        assert env["ORCH_RESULT_BACKEND"].startswith("redis://"), name
        assert "rabbitmq" in stack["services"][name]["depends_on"], name


def test_the_helm_values_file_moves_the_chart_to_rabbitmq() -> None:
    extra = yaml.safe_load((CHART / "values-rabbitmq.yaml").read_text())
    values = {**PROD, "config": {**PROD.get("config", {}), **extra["config"]}}
    values["worker"] = {**PROD.get("worker", {}), **extra["worker"]}
    docs = render(values)
    config = next(d for d in docs if d["kind"] == "ConfigMap" and "ORCH_BROKER_URL" in d["data"])
    assert config["data"]["ORCH_BROKER_URL"].startswith("amqp://")
    assert not any(d["kind"] == "ScaledObject" for d in docs)
