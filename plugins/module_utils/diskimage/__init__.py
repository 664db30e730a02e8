# placeholder: the public API is written in ops/ and re-exported here
