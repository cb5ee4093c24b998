$mailbox = Get-Mailbox -Identity ([string]$p.identity)
$want = [bool]$p.hidden
$StewardPrior = [ordered]@{ hidden = [bool]$mailbox.HiddenFromAddressListsEnabled }
if ([bool]$mailbox.HiddenFromAddressListsEnabled -eq $want) {
    return (Out-StewardResult -Status 'unchanged' -Result (ConvertTo-StewardRecipient $mailbox) -Prior $StewardPrior)
}
Set-Mailbox -Identity ([string]$mailbox.DistinguishedName) -HiddenFromAddressListsEnabled $want -Confirm:$false
return (Out-StewardResult -Status 'changed' -Result (ConvertTo-StewardRecipient (Get-Mailbox -Identity ([string]$mailbox.DistinguishedName))) -Prior $StewardPrior)
