module wsplug/plugins/chat-go

go 1.24
