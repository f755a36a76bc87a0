def mock_response(message):
    return message

def mock_response_stream(message):
    yield message
