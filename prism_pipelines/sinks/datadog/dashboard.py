"""The dashboard template: what the integration exports, on one Datadog dashboard.

Built from the official client's models, so a template that does not match Datadog's schema
fails here rather than at Datadog. Queries follow the metric types: counts are summed with
``.as_count()``, the latency gauges are averaged (mean) and maxed (p95) across series.
"""

from __future__ import annotations

from datadog_api_client.v1.model.dashboard import Dashboard
from datadog_api_client.v1.model.dashboard_layout_type import DashboardLayoutType
from datadog_api_client.v1.model.dashboard_template_variable import DashboardTemplateVariable
from datadog_api_client.v1.model.list_stream_column import ListStreamColumn
from datadog_api_client.v1.model.list_stream_column_width import ListStreamColumnWidth
from datadog_api_client.v1.model.list_stream_query import ListStreamQuery
from datadog_api_client.v1.model.list_stream_response_format import ListStreamResponseFormat
from datadog_api_client.v1.model.list_stream_source import ListStreamSource
from datadog_api_client.v1.model.list_stream_widget_definition import ListStreamWidgetDefinition
from datadog_api_client.v1.model.list_stream_widget_definition_type import (
    ListStreamWidgetDefinitionType,
)
from datadog_api_client.v1.model.list_stream_widget_request import ListStreamWidgetRequest
from datadog_api_client.v1.model.timeseries_widget_definition import TimeseriesWidgetDefinition
from datadog_api_client.v1.model.timeseries_widget_definition_type import (
    TimeseriesWidgetDefinitionType,
)
from datadog_api_client.v1.model.timeseries_widget_request import TimeseriesWidgetRequest
from datadog_api_client.v1.model.widget import Widget
from datadog_api_client.v1.model.widget_display_type import WidgetDisplayType

SCOPE = "$model,$provider"


def dashboard_title(integration) -> str:
    """The title the template is found by: one dashboard per integration."""
    return f"Prism Gateway ({integration.name})"


def _timeseries(title: str, queries: list[str], display: WidgetDisplayType) -> Widget:
    return Widget(
        definition=TimeseriesWidgetDefinition(
            type=TimeseriesWidgetDefinitionType.TIMESERIES,
            title=title,
            show_legend=True,
            requests=[TimeseriesWidgetRequest(q=q, display_type=display) for q in queries],
        )
    )


def dashboard_template(integration) -> Dashboard:
    ns = integration.metric_namespace
    logs_query = f"source:{integration.ddsource} service:{integration.service}"
    bars, line = WidgetDisplayType.BARS, WidgetDisplayType.LINE
    widgets = [
        _timeseries(
            "Requests by model", [f"sum:{ns}.requests{{{SCOPE}}} by {{model}}.as_count()"], bars
        ),
        _timeseries(
            "Errors by model", [f"sum:{ns}.errors{{{SCOPE}}} by {{model}}.as_count()"], bars
        ),
        _timeseries(
            "Latency by model: average and p95 (ms)",
            [
                f"avg:{ns}.latency_ms{{{SCOPE}}} by {{model}}",
                f"max:{ns}.latency_ms.p95{{{SCOPE}}} by {{model}}",
            ],
            line,
        ),
        _timeseries(
            "Tokens: input and output",
            [
                f"sum:{ns}.input_tokens{{{SCOPE}}} by {{model}}.as_count()",
                f"sum:{ns}.output_tokens{{{SCOPE}}} by {{model}}.as_count()",
            ],
            bars,
        ),
        _timeseries(
            "Cost by provider (USD)", [f"sum:{ns}.cost{{{SCOPE}}} by {{provider}}.as_count()"], bars
        ),
        Widget(
            definition=ListStreamWidgetDefinition(
                type=ListStreamWidgetDefinitionType.LIST_STREAM,
                title="Gateway logs",
                requests=[
                    ListStreamWidgetRequest(
                        columns=[
                            ListStreamColumn(field="status_line", width=ListStreamColumnWidth.AUTO),
                            ListStreamColumn(field="timestamp", width=ListStreamColumnWidth.AUTO),
                            ListStreamColumn(field="content", width=ListStreamColumnWidth.COMPACT),
                        ],
                        query=ListStreamQuery(
                            data_source=ListStreamSource.LOGS_STREAM,
                            query_string=f"{logs_query} {SCOPE.replace(',', ' ')}",
                        ),
                        response_format=ListStreamResponseFormat.EVENT_LIST,
                    )
                ],
            )
        ),
    ]
    return Dashboard(
        title=dashboard_title(integration),
        description=(
            f"Prism Gateway traffic exported by integration '{integration.name}' "
            f"(metrics {ns}.*, logs {logs_query}). Created by prism-pipelines; re-running "
            "the dashboard job updates it in place."
        ),
        layout_type=DashboardLayoutType.ORDERED,
        template_variables=[
            DashboardTemplateVariable(name="model", prefix="model", default="*"),
            DashboardTemplateVariable(name="provider", prefix="provider", default="*"),
        ],
        widgets=widgets,
    )
