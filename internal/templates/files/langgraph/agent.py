"""A LangGraph agent that runs without an API key.

The graph has two nodes: `classify` picks a topic for the user's message and
`respond` answers it with a chat model. The model is langchain-core's
GenericFakeChatModel, which replays the reply we give it (streaming it token
by token like a real model), so the graph runs offline. To make it real,
replace `make_model` with a real chat model, e.g. langchain-openai's
ChatOpenAI, and add its package to requirements.txt.

Entrypoints (runagent.config.json):
  chat         chat(message) -> {"answer", "topic", "messages"}
  chat_stream  chat_stream(message) -> one {"node", "update"} dict per graph step
  chat_tokens_stream  chat_tokens_stream(message) -> the answer's text, token by token
"""

import re
from typing import Annotated, Any, Dict, Iterator, List

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict


class State(TypedDict):
    messages: Annotated[List[BaseMessage], add_messages]
    topic: str


_TOPICS = {
    "weather": ("weather", "rain", "sunny", "forecast"),
    "code": ("code", "python", "bug", "function"),
    "greeting": ("hello", "hi", "hey", "good morning"),
}

_ANSWERS = {
    "weather": "I cannot see outside, but the forecast for '{q}' says: bring an umbrella just in case.",
    "code": "For '{q}': write a small test first, then make it pass. Keep functions short.",
    "greeting": "Hello! I am a LangGraph agent running on a fake chat model. Ask me anything.",
    "general": "You asked: '{q}'. I am a LangGraph demo agent; a real model would answer here.",
}


def make_model(reply: str) -> GenericFakeChatModel:
    """A chat model that answers with reply (and streams it word by word)."""
    return GenericFakeChatModel(messages=iter([AIMessage(content=reply)]))


def classify(state: State) -> Dict[str, Any]:
    text = str(state["messages"][-1].content).lower()
    tokens = set(re.findall(r"[a-z]+", text))
    for topic, words in _TOPICS.items():
        if any(w in tokens or (" " in w and w in text) for w in words):
            return {"topic": topic}
    return {"topic": "general"}


def respond(state: State) -> Dict[str, Any]:
    question = str(state["messages"][-1].content)
    reply = _ANSWERS[state["topic"]].format(q=question)
    answer = make_model(reply).invoke(state["messages"])
    return {"messages": [answer]}


def build_graph():
    builder = StateGraph(State)
    builder.add_node("classify", classify)
    builder.add_node("respond", respond)
    builder.add_edge(START, "classify")
    builder.add_edge("classify", "respond")
    builder.add_edge("respond", END)
    return builder.compile()


graph = build_graph()


def _message(m: BaseMessage) -> Dict[str, Any]:
    return {"type": m.type, "content": m.content}


def _jsonable(update: Any) -> Any:
    """Turn a graph state update into plain JSON values."""
    if isinstance(update, BaseMessage):
        return _message(update)
    if isinstance(update, dict):
        return {k: _jsonable(v) for k, v in update.items()}
    if isinstance(update, (list, tuple)):
        return [_jsonable(v) for v in update]
    return update


def _input(message: str) -> Dict[str, Any]:
    return {"messages": [HumanMessage(content=str(message))], "topic": ""}


def chat(message: str) -> Dict[str, Any]:
    """Run the graph to the end and return the answer."""
    result = graph.invoke(_input(message))
    return {
        "answer": result["messages"][-1].content,
        "topic": result["topic"],
        "messages": [_message(m) for m in result["messages"]],
    }


def chat_stream(message: str) -> Iterator[Dict[str, Any]]:
    """Yield the graph's updates as they happen: one per node that ran."""
    for update in graph.stream(_input(message), stream_mode="updates"):
        for node, values in update.items():
            yield {"node": node, "update": _jsonable(values)}


def chat_tokens_stream(message: str) -> Iterator[str]:
    """Yield the answer's text as the model streams it, token by token."""
    for chunk, meta in graph.stream(_input(message), stream_mode="messages"):
        if meta.get("langgraph_node") == "respond" and chunk.content:
            yield chunk.content
