"""The orchestrator's tools: what it may answer, as function-calling tools or a JSON schema.

`Menu` holds one session's roster and which tools are offered: `select_speaker(bot_name)`
always, `hold()` only when talkers can take part, `end_session(reason)` only when a
goal is set. The same menu describes the tools sent with a tool-call request, the schema
of a structured-output request, and what a reply may name when it is read
(`engine.orchestrator.reading`).
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from engine.llm.types import ToolDefinition, ToolFunction
from engine.turn_view import TurnView

SELECT_SPEAKER: Final = "select_speaker"
HOLD: Final = "hold"
END_SESSION: Final = "end_session"
BOT_NAME_ARG: Final = "bot_name"
REASON_ARG: Final = "reason"

ACTION_KEY: Final = "action"


class Menu(BaseModel):
    """What the orchestrator may answer in one session: the roster and the tools offered."""

    model_config = ConfigDict(frozen=True)

    roster: list[str] = Field(min_length=1, description="Bot names in spec order.")
    hold: bool = Field(description="Whether hold() is offered (talkers can take part).")
    end: bool = Field(description="Whether end_session(reason) is offered (a goal is set).")

    @property
    def tool_names(self) -> list[str]:
        """Names of the offered tools."""
        names = [SELECT_SPEAKER]
        if self.hold:
            names.append(HOLD)
        if self.end:
            names.append(END_SESSION)
        return names

    def tools(self) -> list[ToolDefinition]:
        """The offered tools in OpenAI function-calling form."""
        tools = [
            ToolDefinition(
                function=ToolFunction(
                    name=SELECT_SPEAKER,
                    description="Choose the bot that speaks next.",
                    parameters={
                        "type": "object",
                        "properties": {
                            BOT_NAME_ARG: {
                                "type": "string",
                                "enum": list(self.roster),
                                "description": "Exact name of the bot that speaks next.",
                            }
                        },
                        "required": [BOT_NAME_ARG],
                    },
                )
            )
        ]
        if self.hold:
            tools.append(
                ToolDefinition(
                    function=ToolFunction(
                        name=HOLD,
                        description="No bot speaks now; wait for the next message of a human.",
                    )
                )
            )
        if self.end:
            tools.append(
                ToolDefinition(
                    function=ToolFunction(
                        name=END_SESSION,
                        description="End the conversation because its goal has been reached.",
                        parameters={
                            "type": "object",
                            "properties": {
                                REASON_ARG: {
                                    "type": "string",
                                    "description": "One sentence on why the goal is reached.",
                                }
                            },
                            "required": [REASON_ARG],
                        },
                    )
                )
            )
        return tools

    def decision_schema(self) -> dict[str, Any]:
        """The JSON schema of a decision given as structured output.

        With only select_speaker offered it is `{"bot_name": <enum of the roster>}`;
        otherwise `action` (an enum of the offered tools) comes first, and `reason` last
        when end_session is offered. Every property is required and no other is allowed,
        which OpenAI's strict mode demands.
        """
        name = {
            "type": "string",
            "enum": list(self.roster),
            "description": "Exact name of the bot that speaks next.",
        }
        properties: dict[str, Any] = {}
        if self.hold or self.end:
            properties[ACTION_KEY] = {
                "type": "string",
                "enum": self.tool_names,
                "description": "What happens next.",
            }
        properties[BOT_NAME_ARG] = name
        if self.end:
            properties[REASON_ARG] = {
                "type": "string",
                "description": f"For {END_SESSION}: one sentence on why the goal is reached.",
            }
        return {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        }


def menu_for(view: TurnView) -> Menu:
    """The roster and tools for a session: hold only with talkers, end only with a goal."""
    options = view.options
    return Menu(
        roster=view.bot_names,
        hold=options.participation != "autonomous",
        end=options.goal is not None,
    )
