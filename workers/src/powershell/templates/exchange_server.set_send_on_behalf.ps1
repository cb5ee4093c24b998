$mailbox = Get-Mailbox -Identity ([string]$p.identity)
$trusteeDn = Get-StewardRecipientDn -Identity ([string]$p.user)
$add = [string]$p.change -eq 'add'
$has = @($mailbox.GrantSendOnBehalfTo | ForEach-Object { [string]$_.DistinguishedName }) -contains $trusteeDn
$StewardPrior = [ordered]@{ send_on_behalf = $has }
$result = [ordered]@{ mailbox = [string]$mailbox.DistinguishedName; user = $trusteeDn }
if ($has -eq $add) {
    return (Out-StewardResult -Status 'unchanged' -Result $result -Prior $StewardPrior)
}
if ($add) {
    Set-Mailbox -Identity ([string]$mailbox.DistinguishedName) -GrantSendOnBehalfTo @{ Add = $trusteeDn } -Confirm:$false
} else {
    Set-Mailbox -Identity ([string]$mailbox.DistinguishedName) -GrantSendOnBehalfTo @{ Remove = $trusteeDn } -Confirm:$false
}
return (Out-StewardResult -Status 'changed' -Result $result -Prior $StewardPrior)
